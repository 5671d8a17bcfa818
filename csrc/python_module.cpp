// Makes the op library importable as aot_kernels.ops._C; importing it runs the TORCH_LIBRARY
// registrations. Not part of the CMake build, which has no Python.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
