# Hand-written stubs for the Rust extension ikecore._core; checked against the
# built module by `python -m mypy.stubtest ikecore._core` in `make test`.

__version__: str

# --- wire (rust/py/wire.rs) -------------------------------------------------

# --- crypto: Diffie-Hellman (rust/py/crypto.rs) -----------------------------

# --- crypto: payload ciphers and cookie table (rust/py/cipher.rs, cookies.rs) --
