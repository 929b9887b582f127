"""SMR: Spatial Maturity Regression for bone-marrow cell classification.

The numpy core (``smr.core``) holds the math that training, export and serving share; the
sub-packages ``smr.train``, ``smr.export``, ``smr.serving`` and ``smr.clients`` live in the
top-level folders of the same names.
"""

__version__ = "0.1.0"

# The sub-packages live in other folders (pyproject's package-dir). The strict editable install that
# `make` does links them all into one smr/ folder elsewhere on sys.path; when this folder is found
# first (Python started in the checkout), the sub-packages are found in that one too.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
