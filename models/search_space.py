"""What training searches over, kept free of heavy imports so the CLI can offer it as choices."""

# Design variant -> (within-race z-scores, hinge terms); see models.design.
VARIANTS = {
    "linear": (False, False),
    "race_relative": (True, False),
    "hinges": (False, True),
    "race_relative+hinges": (True, True),
}
# Stage-1 models stage 2 may combine with the market; see models.two_stage.
COMBINATION_SOURCES = ("fundamental", "market_residual")
# Stage 1 is fitted on each race's win and, with these weights, its 2nd and 3rd places among
# the runners still unplaced (rank-ordered logit: more information per race). Chosen in the
# walk-forward seasons 2018/19 … 2022/23 among (1), (1, ½), (1, ½, ¼) and (1, 1, 1).
PLACE_WEIGHTS = (1.0, 0.5, 0.25)
# Stage-1 L2 strengths (penalty per race, on standardised design columns).
L2_GRID = (30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.001)
