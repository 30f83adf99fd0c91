// Model kinds and the input check shared by the gateway and the executor.
#include "messages/model_info.hpp"

namespace infergrid {

std::string to_string(model_kind k) {
  switch (k) {
    case model_kind::tensor:
      return "tensor";
    case model_kind::generate:
      return "generate";
    case model_kind::speech:
      return "speech";
  }
  return "unknown";
}

bool model_kind_from_string(const std::string& name, model_kind& out) {
  if (name == "tensor")
    out = model_kind::tensor;
  else if (name == "generate")
    out = model_kind::generate;
  else if (name == "speech")
    out = model_kind::speech;
  else
    return false;
  return true;
}

std::optional<std::string> validate_inputs(const model_info& model,
                                           const std::vector<tensor_data>& xs) {
  if (xs.size() != model.inputs.size())
    return "inputs: model '" + model.name + "' takes "
           + std::to_string(model.inputs.size()) + " input(s), got "
           + std::to_string(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    auto& x = xs[i];
    auto field = "inputs[" + std::to_string(i) + "]";
    const tensor_spec* spec = nullptr;
    for (auto& s : model.inputs)
      if (s.name == x.name)
        spec = &s;
    if (spec == nullptr)
      return field + ".name: model '" + model.name + "' has no input '"
             + x.name + "'";
    for (std::size_t j = 0; j < i; ++j)
      if (xs[j].name == x.name)
        return field + ".name: input '" + x.name + "' given twice";
    if (x.type != spec->type)
      return field + ".datatype: expected " + kserve_name(spec->type)
             + ", got " + kserve_name(x.type);
    bool shape_ok = x.shape.size() == spec->shape.size();
    for (std::size_t d = 0; shape_ok && d < x.shape.size(); ++d) {
      if (x.shape[d] < 0 || (spec->shape[d] >= 0 && spec->shape[d] != x.shape[d]))
        shape_ok = false;
    }
    if (!shape_ok)
      return field + ".shape: expected " + shape_string(spec->shape) + ", got "
             + shape_string(x.shape);
    if (!x.shape.empty() && spec->shape[0] < 0 && model.max_batch_size > 0
        && x.shape[0] > model.max_batch_size)
      return field + ".shape: batch of " + std::to_string(x.shape[0])
             + " exceeds max_batch_size " + std::to_string(model.max_batch_size);
    if (!x.consistent())
      return field + ".data: " + std::to_string(x.bytes.size() / element_size(x.type))
             + " elements do not fill shape " + shape_string(x.shape);
  }
  return std::nullopt;
}

} // namespace infergrid
