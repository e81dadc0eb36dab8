// sample CUDA kernels
