"""amf: normal vs atypical mitotic figure classification (MIDOG 2025 Track 2).

Module map, in the order data flows (README.md, "Package layout", says the same):

Serving (numpy + Pillow + onnxruntime; torch only for the PyTorch back end)
    io            find the input and read its crops page by page, within limits
    mha           stream MetaImage (.mha) stacks
    preprocess    crops -> the network's normalised input; test-time views
    manifest      the ensemble's manifest: architecture(s), input, folds, threshold
    onnx_runtime  the ensemble as one ONNX graph (the default back end)
    ensemble      the ensemble in PyTorch (built by models)
    predict       one run: input -> preprocess -> ensemble -> output
    writing       every file written, all or nothing
    errors        errors that end a run with one line

Training (torch, timm, scikit-learn)
    dataset       the unified dataset table (MIDOG25, AMi-Br, folders)
    splits        cross-validation plans (leave-one-domain-out x folds)
    augment       H&E stain jitter and dihedral transforms
    data          crops in memory, the training dataset and sampler
    models        the model factory: the only module that imports timm
    tflite_import ImageNet MobileNets from TensorFlow Lite files
    runtime       device, data-parallel rank, seeds
    train         one model: train, validate, keep the best epoch
    plan          run a plan's models; assemble them into an ensemble
    metrics       binary metrics and thresholds
    evaluate      Table 2, ROC curves, confusion matrices of a run
    score         the official Track 2 evaluator
    export        the ensemble as checked ONNX graphs

`python -m amf <command>` (__main__) maps each command to one of these.
"""

__version__ = "0.1.0"
