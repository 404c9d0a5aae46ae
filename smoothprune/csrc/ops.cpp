// Op schemas of smoothprune, defined once (docs/design.md §7). Kernels are registered per
// device in their own files, autograd in autograd.cpp; fake kernels in smoothprune/ops/.
#include <Python.h>
#include <torch/library.h>

#include <string>

// Importable as `smoothprune._C`; loading it runs the registrations below.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace smoothprune {

std::string build_info() {
  std::string info = "cpu";
#ifdef SMOOTHPRUNE_WITH_CUDA
  info += "+cuda";
#endif
  return info;
}

TORCH_LIBRARY(smoothprune, m) {
  // Sparse smooth top-k along the last dim. Returns (y, perm, blocks, gamma): the output and the
  // integer state the backward needs (see soft_topk_cpu.cpp). full_sort=True skips the
  // selection shortcut and sorts whole rows (the reference the tests compare it with).
  m.def(
      "soft_topk_forward(Tensor x, Tensor k, Tensor lam, float p, bool magnitude, bool debias, "
      "bool full_sort=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // Vector-Jacobian product of soft_topk_forward's first output, O(n) per row.
  m.def(
      "soft_topk_backward(Tensor grad, Tensor x, Tensor perm, Tensor blocks, Tensor gamma, "
      "Tensor k, Tensor lam, float p, bool magnitude, bool debias) -> Tensor");
  m.def("build_info() -> str", &build_info);
}

}  // namespace smoothprune
