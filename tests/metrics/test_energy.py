"""Energy estimate: AC/MAC accounting on a hand-computed example, and the input checks."""
import numpy as np
import pytest

from minisdit.metrics import ENERGY_PER_AC_PJ, ENERGY_PER_MAC_PJ, conv2d_macs, estimate_energy, linear_macs


def test_energy_hand_example():
    # two spiking layers over T = 4 steps, plus 500 MACs fed by real values (e.g. the embedding)
    report = estimate_energy([("block.0.lif", 0.1, 1000), ("block.1.lif", 0.25, 200)], real_fed_macs=500, time_steps=4)
    # ACs = 4·0.1·1000 + 4·0.25·200 = 400 + 200
    assert [layer.acs for layer in report.layers] == [pytest.approx(400.0), pytest.approx(200.0)]
    assert report.total_acs == pytest.approx(600.0)
    # E_SNN = 0.9·600 + 4.6·500 = 540 + 2300 pJ;  E_ANN = 4.6·(1000 + 200 + 500) = 7820 pJ
    assert report.snn_energy_pj == pytest.approx(2840.0)
    assert report.ann_macs == pytest.approx(1700.0)
    assert report.ann_energy_pj == pytest.approx(7820.0)
    assert report.energy_ratio == pytest.approx(2840.0 / 7820.0)
    assert "ratio 0.363" in str(report)


def test_energy_constants_are_the_45nm_figures():
    assert (ENERGY_PER_AC_PJ, ENERGY_PER_MAC_PJ) == (0.9, 4.6)


def test_silent_and_always_firing_layers():
    silent = estimate_energy([("a", 0.0, 1e6)], time_steps=4)
    assert silent.snn_energy_pj == 0.0 and silent.ann_energy_pj == pytest.approx(4.6e6)
    always = estimate_energy([("a", 1.0, 1e6)], time_steps=1)
    assert always.energy_ratio == pytest.approx(0.9 / 4.6)  # one AC instead of one MAC per operation


def test_mac_counts():
    assert linear_macs(tokens=10, in_features=4, out_features=3) == 120
    assert conv2d_macs(2, 2, in_channels=3, out_channels=5, kernel_h=3, kernel_w=3) == 2 * 2 * 5 * 3 * 9


def test_energy_rejects_bad_input():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        estimate_energy([("a", 1.5, 10)])
    with pytest.raises(ValueError, match="non-negative"):
        estimate_energy([("a", 0.5, -1)])
    with pytest.raises(ValueError, match="\\(name, firing_rate, macs_of_next_layer\\)"):
        estimate_energy([("a", 0.5)])
    with pytest.raises(ValueError, match="time_steps"):
        estimate_energy([], time_steps=0)


def test_forward_macs_counts_every_call_with_the_shapes_it_saw():
    """A Conv2d on 6x6 images, then one Linear applied twice (36 pixel vectors, then 7 vectors): the
    count per sample is each call's MACs, whatever the batch; the modules' forwards are restored."""
    import numpy as np

    from minisdit.autograd import functional as F
    from minisdit.autograd import nn
    from minisdit.metrics.energy import forward_macs

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(0)
            self.conv = nn.Conv2d(2, 4, 3, padding=1, rng=rng)
            self.linear = nn.Linear(4, 4, rng=rng)

        def forward(self, x):
            h = F.transpose(F.reshape(self.conv(x), (x.shape[0], 4, 36)), (0, 2, 1))  # (N, 36, 4)
            h = self.linear(h)
            return self.linear(h[:, :7])

    expected = conv2d_macs(6, 6, 2, 4, 3, 3) + linear_macs(36, 4, 4) + linear_macs(7, 4, 4)
    toy = Toy()
    for batch in (1, 3):
        assert forward_macs(toy, np.zeros((batch, 2, 6, 6), np.float32)) == expected
    assert "forward" not in toy.linear.__dict__ and "forward" not in toy.conv.__dict__


def test_softmax_attention_adds_its_two_products_to_the_forward_macs():
    """QK^T and PV cost 2 L^2 D per block (L tokens, Reconstruction Tokens included); the four
    projections are the same D x D Linears as TimeMix's, so that is the whole difference."""
    from minisdit.metrics.energy import forward_macs
    from minisdit.models import sdit_from_preset

    def macs(**variant):
        model = sdit_from_preset("tiny", **variant)
        image = np.zeros((1, 1, 28, 28), np.float32)
        return forward_macs(model, image, np.zeros(1, np.int64), np.zeros(1, np.int64)), model

    rwkv, model = macs()
    softmax, _ = macs(attention="softmax")
    blocks = len(model.in_blocks) + 1 + len(model.out_blocks)
    length = 2 * model.num_tokens
    assert softmax - rwkv == blocks * 2 * length * length * model.hidden_size
    no_recon_rwkv, model = macs(reconstruction=False)
    no_recon_softmax, _ = macs(reconstruction=False, attention="softmax")
    assert no_recon_softmax - no_recon_rwkv == blocks * 2 * model.num_tokens ** 2 * model.hidden_size
