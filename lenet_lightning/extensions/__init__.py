"""Lightning extensions, in one place: checkpoint I/O and callbacks, guards, progress bar, logger.

Each is a public-API subclass or callback of Lightning; ``experiment.build_trainer`` puts them together.
"""
