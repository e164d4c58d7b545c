"""Stage 3, training: an arm's objective and the resumable loop, the teacher and student jobs, FLOPs per
job, and equal-budget tuning of every arm."""
