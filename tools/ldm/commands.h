// The ldm CLI: one function per subcommand, each in its own file.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace at { class Tensor; }
namespace torch { using at::Tensor; }

namespace ldm::cli {
// Each registers its subcommand on `app`; the callback runs it.
// The command line as main() received it (ldm train --nproc re-runs it per rank).
std::vector<std::string>& argv_copy();
// --nproc: runs `nproc` ranks of this command line (RANK, WORLD_SIZE, MASTER_* set),
// forwards SIGTERM/SIGINT to them and stops the rest when one fails; returns
// 0, or 128 + signal when stopped by one.
int launch_local(int nproc, int port, double grace);
int free_local_port();

void add_info(CLI::App& app);
void add_convert(CLI::App& app);
void add_forward(CLI::App& app);
void add_sample(CLI::App& app);
void add_train(CLI::App& app);
void add_fashion_eval(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_bench(CLI::App& app);
void add_serve(CLI::App& app);

void info_config(const std::string& path);
// A tensor from "FILE[:name]" (the name may be left out when FILE holds one).
torch::Tensor load_tensor_arg(const std::string& spec, const std::string& option);
}  // namespace ldm::cli
