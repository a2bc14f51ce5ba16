"""Mirrors backend/modules/k_prediction.py Prediction (Forge Neo 6e1e0d5): the discrete eps schedule of SD1.5 /
SDXL (scaled-linear betas 0.00085..0.012, 1000 steps) and its sigma <-> timestep maps."""
import torch


def make_beta_schedule(schedule, n_timestep, linear_start=1e-4, linear_end=2e-2, cosine_s=8e-3):  # k_prediction.py:18
    if schedule == "linear":
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=torch.float64) ** 2
    raise ValueError(f"schedule '{schedule}' unknown.")


class AbstractPrediction(torch.nn.Module):  # k_prediction.py:63
    def __init__(self, sigma_data=1.0, prediction_type="epsilon"):
        super().__init__()
        self.sigma_data = sigma_data
        self.prediction_type = prediction_type

    def calculate_input(self, sigma, noise):  # k_prediction.py:70
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):  # k_prediction.py:77 (eps)
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma


class Prediction(AbstractPrediction):  # k_prediction.py:105
    def __init__(self, sigma_data=1.0, prediction_type="epsilon", beta_schedule="linear", linear_start=0.00085,
                 linear_end=0.012, timesteps=1000):
        super().__init__(sigma_data=sigma_data, prediction_type=prediction_type)
        betas = make_beta_schedule(beta_schedule, timesteps, linear_start=linear_start, linear_end=linear_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # register_schedule, k_prediction.py:110
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    def timestep(self, sigma):  # k_prediction.py:136
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):  # k_prediction.py:141
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent):  # k_prediction.py:149
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        percent = 1.0 - percent
        return self.sigma(torch.tensor(percent * 999.0)).item()
