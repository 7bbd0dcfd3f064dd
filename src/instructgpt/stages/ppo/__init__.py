"""Step 3 of InstructGPT: PPO against a frozen reward model under a KL penalty to the SFT policy.

``instructgpt.losses.ppo`` holds the math as pure tensor functions (rewards, GAE, losses, KL controllers).
This file stays import-free so that ``import instructgpt.losses.ppo`` pulls in nothing but torch.
"""
