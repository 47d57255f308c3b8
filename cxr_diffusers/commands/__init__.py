"""Sub-commands of the `cxr-diffusers` CLI; each module exposes `register(subparsers)`."""
