#ifndef NVFP4X_VERSION_H
#define NVFP4X_VERSION_H
#define NX_VERSION "0.1.0"
#endif
