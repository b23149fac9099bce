// `import fastseg._C` loads this shared object; the operators register themselves with the
// dispatcher (TORCH_LIBRARY) as it loads. The module's only Python function manages the cache
// of large CPU buffers (common/large_buffer.h).
#include <Python.h>

#include "common/large_buffer.h"

namespace {

PyObject* empty_cache(PyObject*, PyObject*) {
  return PyLong_FromLongLong(fastseg::release_cached_buffers());
}

PyMethodDef methods[] = {
    {"empty_cache", empty_cache, METH_NOARGS,
     "Returns fastseg's cached CPU buffers to the system; returns the bytes released."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "fastseg._C",
                               "fastseg native operators (registered under torch.ops.fastseg)", -1,
                               methods};
  return PyModule_Create(&module);
}
