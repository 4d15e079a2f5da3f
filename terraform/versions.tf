terraform {
  required_version = ">= 1.5"
  required_providers {
    # Pinned to the 6.x line whose schema CI checks every resource against (the cdktf
    # packages of provider 6.50.0: tools/terraform-schema).
    google = {
      source  = "hashicorp/google"
      version = "~> 6.50"
    }
    # Only for google_project_service_identity, which google has not taken out of beta.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 6.50"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

provider "google-beta" {
  project = var.project_id
  region  = var.region
}
