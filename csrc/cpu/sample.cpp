// sample: see csrc/include/spct/
