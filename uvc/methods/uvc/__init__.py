"""UVC (ICLR 2022): the primal-dual search over counts, skip gates and duals. Imports
``uvc.methods.common`` and below; never another method.
"""
