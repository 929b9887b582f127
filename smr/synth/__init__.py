"""Synthetic bone marrow: patch data sets and whole slides whose cells' true maturity is known.

``smr synth`` / :func:`smr.synth.patches.write_patches` write a class-folder data set,
``smr synth-slide`` / :func:`smr.synth.slide.write_slide` a pyramidal TIFF with detections.
Modules: ``population`` (classes, counts, latent maturity, label noise), ``morphology`` (cell
parameters from maturity), ``stain`` (MGG colours), ``render`` (drawing), ``patches``, ``slide``,
``contact_sheet``. The package top stays import-light for the ``smr`` command.
"""
