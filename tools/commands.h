// Subcommands of `extrafs` that live in their own files. Each add_* function registers its
// subcommand(s) on `app`; when one of them is parsed, its callback runs the command and stores the
// process exit code (0 success, 1 runtime failure, 2 usage error) in *exit_code. Errors are
// printed as one line on stderr, prefixed "extrafs: ".
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace extrafs::tools {

// Prints "extrafs: MSG" on stderr and returns `code`.
int fail(const std::string& msg, int code = 1);

void add_publish_command(CLI::App& app, int* exit_code);   // tools/publish_cmd.cc
void add_rm_command(CLI::App& app, int* exit_code);        // tools/rm_cmd.cc
void add_gc_command(CLI::App& app, int* exit_code);        // tools/gc_cmd.cc
void add_docker_command(CLI::App& app, int* exit_code);    // tools/docker_cmd.cc (attach, detach)
void add_ls_command(CLI::App& app, int* exit_code);        // tools/ls_cmd.cc
void add_verify_command(CLI::App& app, int* exit_code);    // tools/verify_cmd.cc
void add_prefetch_command(CLI::App& app, int* exit_code);  // tools/prefetch_cmd.cc
void add_push_command(CLI::App& app, int* exit_code);      // tools/push_cmd.cc

}  // namespace extrafs::tools
