"""The numpy-only math of SMR, shared by training, export and serving.

* ``lineages``: the lineage spec (which classes, in which maturity order);
* ``targets``: regression targets on a lineage's curve, stage boundaries, stage from t;
* ``curves``: fixed / linear / Bézier curve models, fitting and projection;
* ``curves_json``: the ``curves.json`` document of all lineages' curves;
* ``svm``: the RBF SVM evaluated without scikit-learn;
* ``review``: each cell's stage per lineage and whether it is flagged for review;
* ``contract``: the served model, tensor and parameter names (pure Python, no numpy).

Import from the submodules (``from smr.core.curves import fit_curve``). The package depends on
numpy and the standard library only, and its modules import each other relatively: export copies
these files next to the Triton python model, where ``smr`` is not installed.
"""
