// The ldm CLI: one function per subcommand, each in its own file.
#pragma once
#include <CLI/CLI.hpp>
#include <torch/types.h>

#include <map>
#include <string>

namespace torch::nn { class Module; }

namespace ldm::cli {
// Each registers its subcommand on `app`; the callback runs it.
void add_info(CLI::App& app);
void add_convert(CLI::App& app);
void add_forward(CLI::App& app);

void info_config(const std::string& path);
// forward for text encoders (ids -> last_hidden_state, pooled); null if `m` is not one.
torch::nn::Module* forward_text_encoder(torch::nn::Module& m, const std::map<std::string, torch::Tensor>& in,
                                        const std::string& file, const std::string& prefix,
                                        std::map<std::string, torch::Tensor>& out);
}  // namespace ldm::cli
