"""callbacks.TensorBoardExtras during fit: the custom-scalars layout names real tags, histograms land every N steps,
validation logs every k of eval_ks, and the progress bar shows reward, pass@k and tokens/s."""

from __future__ import annotations

import glob
import importlib.util
import re
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import TensorBoardExtras
from callbacks.tensorboard_extras import layout
from modules import KLSettings

_spec = importlib.util.spec_from_file_location("fit_helpers",
                                              Path(__file__).resolve().parents[1] / "modules" / "fit_helpers.py")
fit_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit_helpers)


def test_layout_histograms_eval_ks_and_progress_bar(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = fit_helpers.tiny_trainer(4, [TensorBoardExtras(every_n_steps=2)], logger=logger, log_every_n_steps=1,
                                       limit_val_batches=None, val_check_interval=2, check_val_every_n_epoch=None,
                                       num_sanity_val_steps=-1)
    trainer.fit(fit_helpers.tiny_module(kl=KLSettings(coef=0.05)), datamodule=fit_helpers.tiny_data())
    events = EventAccumulator(glob.glob(f"{logger.log_dir}/events.out.tfevents*")[0],
                              size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])

    assert {"val/pass@1", "val/pass@2", "val/pass@4", "val/maj@4", "val/bon@4", "val/bon@k"} <= scalars  # n = 4, k = 2
    assert "custom_scalars__config__" in events.Tags()["tensors"]
    for category, charts in layout().items():
        for title, (_, patterns) in charts.items():
            matched = [t for t in scalars if any(re.fullmatch(p, t) for p in patterns)]
            assert matched, f"layout chart {category} / {title} matches no logged scalar ({patterns})"

    histograms = set(events.Tags()["histograms"])
    assert {"train/rewards", "train/weights", "val/solve_rate"} <= histograms
    assert [e.step for e in events.Histograms("train/rewards")] == [0, 2]
    assert [e.step for e in events.Histograms("val/solve_rate")] == [0, 2, 4]  # step 0: the sanity validation
    solve_rate = events.Histograms("val/solve_rate")[0].histogram_value
    assert solve_rate.num == 8  # tiny_data has 8 validation prompts

    shown = trainer.progress_bar_metrics
    assert {"reward", "pass@2", "tok/s"} <= set(shown), shown
