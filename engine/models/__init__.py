"""Foundation-model registry, checkpoint loaders, MAE / MoCo v3 and the classifier built on timm."""
