"""SMR: Spatial Maturity Regression for bone-marrow cell classification.

The numpy core (``smr.core``) holds the math that training, export and serving share; the
sub-packages ``smr.train``, ``smr.export``, ``smr.serving`` and ``smr.clients`` live in the
top-level folders of the same names.
"""

__version__ = "0.1.0"
