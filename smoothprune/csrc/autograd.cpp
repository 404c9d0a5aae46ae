// Autograd of soft_topk_forward, for every device: the gradient of the first output `y` is the
// native op soft_topk_backward (the closed-form block Jacobian, docs/design.md §5); perm,
// blocks and gamma are integer state and not differentiable; k and lam get no gradient.
//
// soft_topk_backward is not differentiable (no second derivatives): its own autograd kernel makes
// a backward through it (create_graph=True, then a second backward) raise instead of silently
// returning zeros, as the dispatcher's fallback for ops without autograd would.
//
// Registered in C++ rather than with torch.library.register_autograd because the Python
// autograd glue costs ~50-80 us per forward + backward: on a small model whose every Linear
// weight is pruned, that was more than the operator itself (see the README's overhead section).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace smoothprune {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_backward_op(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& perm,
                            const at::Tensor& blocks, const at::Tensor& gamma, const at::Tensor& k,
                            const at::Tensor& lam, double p, bool magnitude, bool debias) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("smoothprune::soft_topk_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, double, bool, bool)>();
  return op.call(grad, x, perm, blocks, gamma, k, lam, p, magnitude, debias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_forward_op(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& lam, double p, bool magnitude,
    bool debias, bool full_sort) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("smoothprune::soft_topk_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool,
                           bool, bool)>();
  return op.call(x, k, lam, p, magnitude, debias, full_sort);
}

class SoftTopkBackwardFunction : public torch::autograd::Function<SoftTopkBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const at::Tensor& grad, const at::Tensor& x,
                               const at::Tensor& perm, const at::Tensor& blocks,
                               const at::Tensor& gamma, const at::Tensor& k, const at::Tensor& lam,
                               double p, bool magnitude, bool debias) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return {call_backward_op(grad, x, perm, blocks, gamma, k, lam, p, magnitude, debias)};
  }

  static variable_list backward(AutogradContext* /*ctx*/, variable_list /*grad_outputs*/) {
    TORCH_CHECK(false,
                "soft_topk: second derivatives are not implemented (a backward through the "
                "gradient of soft_topk_mask / soft_topk_mag, e.g. after "
                "torch.autograd.grad(..., create_graph=True))");
    return {};
  }
};

at::Tensor soft_topk_backward_autograd(const at::Tensor& grad, const at::Tensor& x,
                                       const at::Tensor& perm, const at::Tensor& blocks,
                                       const at::Tensor& gamma, const at::Tensor& k,
                                       const at::Tensor& lam, double p, bool magnitude, bool debias) {
  if (!at::GradMode::is_enabled() || !(grad.requires_grad() || x.requires_grad())) {
    // an ordinary backward (no create_graph): no node to record, skip the Function machinery
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_backward_op(grad, x, perm, blocks, gamma, k, lam, p, magnitude, debias);
  }
  return SoftTopkBackwardFunction::apply(grad, x, perm, blocks, gamma, k, lam, p, magnitude, debias)[0];
}

class SoftTopkFunction : public torch::autograd::Function<SoftTopkFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& k,
                               const at::Tensor& lam, double p, bool magnitude, bool debias,
                               bool full_sort) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, perm, blocks, gamma] = call_forward_op(x, k, lam, p, magnitude, debias, full_sort);
    ctx->save_for_backward({x, perm, blocks, gamma, k, lam});
    ctx->saved_data["p"] = p;
    ctx->saved_data["magnitude"] = magnitude;
    ctx->saved_data["debias"] = debias;
    ctx->mark_non_differentiable({perm, blocks, gamma});
    ctx->set_materialize_grads(false);  // no zero gradients for the three integer-state outputs
    return {y, perm, blocks, gamma};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // one entry per forward input: x, k, lam, p, magnitude, debias, full_sort
    variable_list grads(7);
    if (!grad_outputs[0].defined()) return grads;  // y unused: no gradient (grads not materialized)
    const auto saved = ctx->get_saved_variables();
    // through the dispatcher: under create_graph=True its Autograd kernel records the node above
    grads[0] = call_backward_op(grad_outputs[0], saved[0], saved[1], saved[2], saved[3], saved[4],
                                saved[5], ctx->saved_data["p"].toDouble(),
                                ctx->saved_data["magnitude"].toBool(),
                                ctx->saved_data["debias"].toBool());
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> soft_topk_forward_autograd(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& lam, double p, bool magnitude,
    bool debias, bool full_sort) {
  if (!at::GradMode::is_enabled() || !x.requires_grad()) {  // nothing to differentiate
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward_op(x, k, lam, p, magnitude, debias, full_sort);
  }
  auto out = SoftTopkFunction::apply(x, k, lam, p, magnitude, debias, full_sort);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(smoothprune, Autograd, m) {
  m.impl("soft_topk_forward", &soft_topk_forward_autograd);
  m.impl("soft_topk_backward", &soft_topk_backward_autograd);
}

}  // namespace smoothprune
