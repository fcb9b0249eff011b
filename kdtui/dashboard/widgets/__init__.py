"""The dashboard's widgets and screens, one per file. Each takes what it shows from a `RunState`
through a `show(...)` method, so the screens decide when to refresh and the widgets stay dumb."""
