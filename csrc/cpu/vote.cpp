// vote: see csrc/include/spct/
