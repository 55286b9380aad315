"""Point-in-time features for the Oracle model, one definition for training and live scoring.

Groups (one module each): form_class, trainer_intention (T.I.E.), sectional_speed (SSM),
bias_positioning (BOP), trip (TRA). See docs/features.md for every feature's definition.
"""

from models.features.frame import (
    FEATURE_COLUMNS,
    FEATURE_DESCRIPTIONS,
    FEATURE_GROUPS,
    FeatureState,
    build_training_frame,
    cards_from_racecard,
    compute_features,
    features_for_race,
    training_frame_from,
)

__all__ = [
    "FEATURE_COLUMNS",
    "FEATURE_DESCRIPTIONS",
    "FEATURE_GROUPS",
    "FeatureState",
    "build_training_frame",
    "cards_from_racecard",
    "compute_features",
    "features_for_race",
    "training_frame_from",
]
