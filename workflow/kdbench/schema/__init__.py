"""What the workflow imports at parse time (no torch, transformers, pandas or seaborn): the config as frozen
dataclasses, the loss registry, layer maps, arms, the cross-checked experiment, checks of what the config
names outside itself, and the planner."""
