// vote CUDA kernels
