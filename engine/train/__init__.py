"""One training loop shared by pre-training, fine-tuning and linear probing; prediction; distributed helpers."""
