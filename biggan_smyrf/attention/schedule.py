"""Which attention a network uses in each phase of a run, as changes on the settings it was built with.

    schedule = AttentionSchedule(train=None, eval=AttentionChange(kind="dense"))
    schedule.config("eval", built)      # the AttentionConfig a block built with `built` uses

Every entry is an `AttentionChange`: only the fields it sets change. So `eval: {kind: dense}`
keeps the block's SMYRF settings for later (a swap back is one field), and
`train: {q_cluster_size: 1024}` on a SMYRF-built G changes only the cluster size -- it never
silently turns the block dense. When an entry switches a dense-built block to SMYRF without sizes,
the block gets the run's SMYRF settings (`smyrf_settings`), not unrelated library defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import AttentionChange, AttentionConfig

PHASES = ("train", "eval", "compare")


@dataclass
class AttentionSchedule:
    """Which attention G uses when training and when evaluating (validation, sample grids).

    Each entry changes the fields it sets of the attention G was built with
    (`generator.attention`); null keeps the built kind. Example: train with SMYRF to afford
    128x128 attention and evaluate with exact dense attention:
        train: null            # as built: {kind: smyrf, n_hashes: 4, q_cluster_size: 2048}
        eval:  {kind: dense}
    Entries apply to every attention block of G; D keeps `discriminator.attention`.
    compare: a second attention for G_ema in every validation, side by side with `eval`: metrics
        are logged for both (val/fid_dense and val/fid_smyrf, ...), the paper's
        interchangeability claim measured on every run.
    diagnostics: at each validation, log per attention block how far SMYRF is from dense
        (diag/smyrf_error_<res>px, diag/smyrf_mass_share_<res>px) and an image of its clusters.
    """

    train: Optional[AttentionChange] = None
    eval: Optional[AttentionChange] = None
    compare: Optional[AttentionChange] = None
    diagnostics: bool = True

    # In Python an entry may also be a full AttentionConfig, which replaces the built settings.

    def change(self, phase: str) -> Optional[AttentionChange]:
        if phase not in PHASES:
            raise ValueError(f"attention phase must be one of {PHASES}, got {phase!r}")
        return getattr(self, phase)

    def smyrf_settings(self, built: AttentionConfig) -> AttentionConfig:
        """The SMYRF settings this run uses for a block built with `built`: as trained (built,
        then the train entry) if that is SMYRF, else the first of compare and eval that makes the
        block SMYRF, else the library defaults."""
        trained = _apply(self.train, built)
        if trained.kind == "smyrf":
            return trained
        for change in (self.compare, self.eval):
            if (config := _apply(change, built)).kind == "smyrf":
                return config
        return built.with_(kind="smyrf")

    def config(self, phase: str, built: AttentionConfig) -> AttentionConfig:
        """What a block built with `built` uses in `phase`: the built kind with the run's SMYRF
        settings, then the phase's entry."""
        return _apply(self.change(phase), self.smyrf_settings(built).with_(kind=built.kind))


def _apply(entry, config: AttentionConfig) -> AttentionConfig:
    if entry is None:
        return config
    return entry if isinstance(entry, AttentionConfig) else entry.apply(config)
