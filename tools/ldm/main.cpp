// ldm: train and sample latent diffusion models. Errors print one line and
// exit non-zero; nothing here aborts on user input.
#include <torch/torch.h>

#include <csignal>
#include <iostream>

#include "ldm/error.h"
#include "ldm/util/runtime.h"
#include "tools/ldm/commands.h"

namespace {
// CLI11 takes the token after an option as its value even when that token is
// another of the command's options (`-i --resize-latent` made the flag a file
// name): refuse that, naming both.
void check_values_are_not_options(CLI::App& app, int argc, char** argv) {
  CLI::App* cmd = &app;
  int i = 1;
  for (; i < argc; ++i) {
    CLI::App* sub = nullptr;
    for (auto* s : cmd->get_subcommands({}))
      if (s->check_name(argv[i])) sub = s;
    if (!sub) break;
    cmd = sub;
  }
  for (; i + 1 < argc; ++i) {
    const std::string tok = argv[i], next = argv[i + 1];
    if (tok == "--") return;
    if (tok.size() < 2 || tok[0] != '-' || tok.find('=') != std::string::npos) continue;
    const auto* opt = cmd->get_option_no_throw(tok);
    if (!opt || opt->get_items_expected_min() == 0 || next.size() < 2 || next[0] != '-') continue;
    if (cmd->get_option_no_throw(next.substr(0, next.find('='))))
      throw ldm::Error(tok + ": expected a value, got the option " + next);
  }
}
}  // namespace

int main(int argc, char** argv) {
  ldm::reexec_with_runtime_env(argv);
  ldm::cli::argv_copy().assign(argv, argv + argc);
  // A write to a socket whose peer died (Gloo's, when another rank is killed;
  // a server's client gone) must be an error we report, not a silent SIGPIPE
  // death: Python ignores SIGPIPE at startup, and PyTorch's c10d relies on it.
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"ldm: latent diffusion models in C++ (train, sample, convert, inspect)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every subcommand");
  ldm::cli::add_info(app);
  ldm::cli::add_convert(app);
  ldm::cli::add_forward(app);
  ldm::cli::add_sample(app);
  ldm::cli::add_train(app);
  ldm::cli::add_fashion_eval(app);
  ldm::cli::add_tokenize(app);
  ldm::cli::add_bench(app);
  ldm::cli::add_serve(app);
  if (argc > 1 && argv[1][0] != '-') {  // CLI11 would say "A subcommand is required"
    std::string names;
    for (auto* sub : app.get_subcommands({})) names += (names.empty() ? "" : ", ") + sub->get_name();
    bool known = false;
    for (auto* sub : app.get_subcommands({})) known = known || sub->get_name() == argv[1];
    if (!known) {
      std::cerr << "ldm: error: unknown command \"" << argv[1] << "\"; the commands are " << names << "\n";
      return 1;
    }
  }
  try {
    check_values_are_not_options(app, argc, argv);
    ldm::init_runtime();
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ldm::Error& e) {
    std::cerr << "ldm: error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "ldm: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "ldm: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
