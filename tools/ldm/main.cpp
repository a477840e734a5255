// ldm: train and sample latent diffusion models. Errors print one line and
// exit non-zero; nothing here aborts on user input.
#include <torch/torch.h>

#include <iostream>

#include "ldm/error.h"
#include "ldm/util/runtime.h"
#include "tools/ldm/commands.h"

int main(int argc, char** argv) {
  ldm::reexec_with_runtime_env(argv);
  ldm::cli::argv_copy().assign(argv, argv + argc);
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
