"""SMR training: the DenseNet-121 embedding network, the TML + SMR losses, the per-epoch curve
refit and SVM, cross-validation and the paper's figures (``smr train``, ``smr evaluate``, ``smr cv``).

Modules are imported by the commands that need them, so importing the package stays cheap.
"""
