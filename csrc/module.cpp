// `import fastseg._C` loads this shared object; the operators register themselves with the
// dispatcher (TORCH_LIBRARY) as it loads, so the module itself has no Python functions.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "fastseg._C",
                               "fastseg native operators (registered under torch.ops.fastseg)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
