// The ldm CLI: one function per subcommand, each in its own file.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

namespace ldm::cli {
// Each registers its subcommand on `app`; the callback runs it.
void add_info(CLI::App& app);
void add_convert(CLI::App& app);
void add_forward(CLI::App& app);

void info_config(const std::string& path);
}  // namespace ldm::cli
