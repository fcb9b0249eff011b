"""`python -m kdtui` is the same CLI as `kdtui` (torchrun launches it this way)."""

from kdtui.cli import main

main()
