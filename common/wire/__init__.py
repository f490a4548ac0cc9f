"""Wire building blocks: the length-prefixed frame decoder and hardened XML."""
