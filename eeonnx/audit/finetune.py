"""Attack 2, fine-tune alignment: placeholder replaced below."""
