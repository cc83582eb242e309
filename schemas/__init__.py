"""The on-disk contract of a mined corpus (installed as `dataengine.schemas`). See README.md."""
