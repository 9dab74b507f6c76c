"""Training: algorithm records, config, PPO math, the rollout engine, trainers, the run loop, checkpoints."""
