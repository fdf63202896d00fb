"""The client (holds the secret): ``Client`` (encode/decode), the encrypted
tokenizer's plain view, the generation loop, verify and bench."""
