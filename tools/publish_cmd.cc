// Registers `extrafs publish` (being written; until then the command does not exist).
#include "tools/commands.h"

namespace extrafs::tools {

void add_publish_command(CLI::App&, int*) {}

}  // namespace extrafs::tools
