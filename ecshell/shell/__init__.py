"""The IPython layer: everything that imports IPython or prompt_toolkit lives here.

- :mod:`.extension`: ``%load_ext ecshell``/``%unload_ext``, completion, the toolbar.
- :mod:`.magics`: parse what the operator typed, call :mod:`.session`.
- :mod:`.session`: what each magic does, on the plain core.
- :mod:`.targets`: the target language (``web-*``, ``role=db``, ``failed``).
- :mod:`.live`: progress and streamed output while a broadcast runs.
- :mod:`.display`: folded text and HTML views of results.
- :mod:`.report`: the ``%cluster`` and ``%cost`` tables.
- :mod:`.console`: the ``ecshell`` command; :mod:`.demo`: ``ecshell-demo``.

Nothing outside this package imports IPython at module level
(``tests/test_architecture.py`` checks it).
"""
