"""d2reg's command line tools, importable from an installed package.

Each module has a ``main``; run one with ``python -m d2reg.tools.<name> ...``, through its console
script (``d2reg-train``, ``d2reg-lazy-train``, ``d2reg-predict``, ``d2reg-demo``, ``d2reg-export-onnx``,
``d2reg-benchmark``), or from a clone as ``python tools/<name>.py ...`` (thin shims over these modules).
The two training tools follow detectron2's ``tools/*train_net.py``: ``main(args)`` is the worker
``launch`` runs in every process (parsed arguments), ``invoke_main(argv=None)`` the command line entry.
"""
