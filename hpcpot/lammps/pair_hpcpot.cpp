// pair_style hpcpot: see pair_hpcpot.h.  Each local atom's energy depends on the positions of
// its neighbours within Rc (local or ghost); its forces on ghosts go back to their owners by
// LAMMPS's reverse communication (newton on), and the global virial is sum(r . f) over local
// and ghost atoms (virial_fdotr_compute), which holds for any many-body energy.
#include "pair_hpcpot.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <fstream>
#include <sstream>
#include <string>

using namespace LAMMPS_NS;

PairHPCPot::PairHPCPot(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
  // compute pair hpcpot: [1] atoms extrapolating at the last evaluation,
  // [2] their running sum over evaluations (this rank's; compute pair sums over ranks)
  nextra = 2;
  pvector = new double[nextra];
  pvector[0] = pvector[1] = 0.0;
}

PairHPCPot::~PairHPCPot()
{
  delete[] pvector;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairHPCPot::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

/* pair_style hpcpot [warn_every N] */
void PairHPCPot::settings(int narg, char **arg)
{
  int iarg = 0;
  while (iarg < narg) {
    std::string key = arg[iarg];
    if (key == "warn_every" && iarg + 1 < narg) {
      warn_every = std::stoll(arg[iarg + 1]);
      if (warn_every < 0) error->all(FLERR, "pair_style hpcpot: warn_every must be >= 0");
      iarg += 2;
    } else {
      error->all(FLERR, "pair_style hpcpot: unknown keyword '" + key + "' (allowed: warn_every N)");
    }
  }
}

/* pair_coeff * * MODEL.json El1 El2 ... (one element, or NULL, per atom type) */
void PairHPCPot::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff for hpcpot: expected '* * MODEL.json' and " + std::to_string(ntypes) +
                          " element symbols (one per atom type), got " + std::to_string(narg) + " arguments");
  if (std::string(arg[0]) != "*" || std::string(arg[1]) != "*")
    error->all(FLERR, "pair_coeff for hpcpot: the first two arguments must be '* *'");

  // rank 0 reads the file; every rank parses the same text
  std::string text;
  int ok = 1;
  if (comm->me == 0) {
    std::ifstream in(arg[2], std::ios::binary);
    if (in) {
      std::ostringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    } else {
      ok = 0;
    }
  }
  MPI_Bcast(&ok, 1, MPI_INT, 0, world);
  if (!ok) error->all(FLERR, std::string("pair_coeff for hpcpot: cannot read model file ") + arg[2]);
  long long n = static_cast<long long>(text.size());
  MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, world);
  text.resize(n);
  MPI_Bcast(&text[0], static_cast<int>(n), MPI_CHAR, 0, world);
  try {
    model = hpcpot::Model::from_json(text, arg[2]);
  } catch (const std::exception &e) {
    error->all(FLERR, std::string("pair_coeff for hpcpot: ") + e.what());
  }
  have_model = true;

  type_element.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; t++) {
    std::string sym = arg[2 + t];
    if (sym == "NULL") continue;
    int e = model.element_index(sym);
    if (e < 0) {
      std::string known;
      for (const auto &s : model.elements) known += (known.empty() ? "" : " ") + s;
      error->all(FLERR, "pair_coeff for hpcpot: element " + sym + " (atom type " + std::to_string(t) +
                            ") is not in model file " + arg[2] + " (its elements: " + known + ")");
    }
    type_element[t] = e;
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++)
      setflag[i][j] = (type_element[i] >= 0 && type_element[j] >= 0) ? 1 : 0;
}

void PairHPCPot::init_style()
{
  if (!have_model) error->all(FLERR, "pair_style hpcpot: no model (pair_coeff * * MODEL.json ...)");
  if (force->newton_pair == 0) error->all(FLERR, "pair_style hpcpot requires newton pair on");
  neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairHPCPot::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  return model.cutoff;
}

void PairHPCPot::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;
  const double rc2 = model.cutoff * model.cutoff;
  const int inum = list->inum;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  int n_extrapolated = 0;

  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    const int c = type_element[type[i]];
    if (c < 0) continue;
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    d.resize(3 * static_cast<size_t>(jnum));
    el.resize(jnum);
    idx.resize(jnum);
    int nn = 0;
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const int e = type_element[type[j]];
      if (e < 0) continue;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      if (dx * dx + dy * dy + dz * dz >= rc2) continue;
      d[3 * nn] = dx;
      d[3 * nn + 1] = dy;
      d[3 * nn + 2] = dz;
      el[nn] = e;
      idx[nn] = j;
      nn++;
    }
    fn.resize(3 * static_cast<size_t>(nn));
    bool extrapolated = false;
    const double ei = model.atom(c, nn, d.data(), el.data(), fn.data(), scratch, extrapolated);
    if (extrapolated) n_extrapolated++;
    double fix = 0.0, fiy = 0.0, fiz = 0.0;
    for (int q = 0; q < nn; q++) {
      const int j = idx[q];
      f[j][0] += fn[3 * q];
      f[j][1] += fn[3 * q + 1];
      f[j][2] += fn[3 * q + 2];
      fix -= fn[3 * q];
      fiy -= fn[3 * q + 1];
      fiz -= fn[3 * q + 2];
    }
    f[i][0] += fix;
    f[i][1] += fiy;
    f[i][2] += fiz;
    if (eflag_global) eng_vdwl += ei;
    if (eflag_atom) eatom[i] += ei;
    if (vflag_atom) {
      // the virial of E_i, sum_q (r_q - r_i) (x) F_q, all given to atom i (symmetrised)
      double *v = vatom[i];
      for (int q = 0; q < nn; q++) {
        const double *D = &d[3 * q];
        const double *F = &fn[3 * q];
        v[0] += D[0] * F[0];
        v[1] += D[1] * F[1];
        v[2] += D[2] * F[2];
        v[3] += 0.5 * (D[0] * F[1] + D[1] * F[0]);
        v[4] += 0.5 * (D[0] * F[2] + D[2] * F[0]);
        v[5] += 0.5 * (D[1] * F[2] + D[2] * F[1]);
      }
    }
  }
  if (vflag_fdotr) virial_fdotr_compute();

  // extrapolation: count on every rank, warn from rank 0 at most once per warn_every steps
  // (pvector holds this rank's counts: compute pair sums them over ranks)
  pvector[0] = n_extrapolated;
  extrapolated_total += n_extrapolated;
  pvector[1] = extrapolated_total;
  int total = 0;
  MPI_Allreduce(&n_extrapolated, &total, 1, MPI_INT, MPI_SUM, world);
  if (total > 0 && warn_every > 0 &&
      (last_warning < 0 || update->ntimestep - last_warning >= warn_every)) {
    last_warning = update->ntimestep;
    if (comm->me == 0)
      error->warning(FLERR, "hpcpot: " + std::to_string(total) + " atom(s) at step " +
                                std::to_string(update->ntimestep) +
                                " have fingerprints outside the model's training range (extrapolation; "
                                "next warning at the earliest " + std::to_string(warn_every) +
                                " steps later; compute pair hpcpot counts them)");
  }
}
