"""Hardware models and the kernel drivers that program them."""
