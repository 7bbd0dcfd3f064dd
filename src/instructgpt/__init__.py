"""instructgpt: an InstructGPT-style RLHF pipeline (SFT, reward model, PPO) on TRL, transformers and accelerate."""

__version__ = "0.1.0"
